// Greedy generation in llama.cpp (node-llama-cpp 3.21.1, CPU): through its chat API on the GGUF's own chat template, or
// from given token ids, optionally with LoRA adapter GGUF files loaded beside the model.
//
//   node generate.mjs request.json > result.json
//
// request: { "model": "m.gguf", "lora": ["a.gguf"] (optional), "maxTokens": 24, "threads": 2,
//            "runs": [ { "chat": "user message" } | { "ids": [prompt ids] }, ... ] }
// result:  { "chatWrapper": "JinjaTemplate", "outputs": [ { "tokens": [...], "text": "..." } ] }
//   chat: LlamaChatSession with chatWrapper "auto" (node-llama-cpp resolves the GGUF's tokenizer.chat_template), an
//         empty history (no default system prompt), temperature 0, no repeat penalty; tokens are the answer's ids.
//   ids:  the sequence evaluated from those ids, greedy, until an end-of-generation token or maxTokens.
// The KV cache is F32 (llama.cpp's default F16 cache rounds keys and values), as in logits.mjs.
import fs from "node:fs";
import { getLlama, LlamaLogLevel, LlamaChatSession } from "node-llama-cpp";

const req = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const maxTokens = req.maxTokens ?? 24;
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: req.model, gpuLayers: 0 });
const out = { chatWrapper: null, outputs: [] };
for (const run of req.runs) {
    const context = await model.createContext({
        contextSize: 256, batchSize: 256, sequences: 1, threads: req.threads ?? 2, flashAttention: false,
        experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
        ...(req.lora ? { lora: { adapters: req.lora.map((filePath) => ({ filePath, scale: 1 })) } } : {}),
    });
    const sequence = context.getSequence();
    if (run.chat != null) {
        const session = new LlamaChatSession({ contextSequence: sequence });
        session.setChatHistory([]);
        out.chatWrapper = session.chatWrapper.wrapperName;
        const tokens = [];
        const text = await session.prompt(run.chat, {
            maxTokens, temperature: 0, repeatPenalty: false, trimWhitespaceSuffix: false,
            onToken: (t) => tokens.push(...t),
        });
        out.outputs.push({ tokens, text });
    } else {
        const tokens = [];
        for await (const t of sequence.evaluate(run.ids, { temperature: 0 })) {
            if (model.isEogToken(t)) break;
            tokens.push(t);
            if (tokens.length >= maxTokens) break;
        }
        out.outputs.push({ tokens, text: model.detokenize(tokens, false) });
    }
    await context.dispose();
}
process.stdout.write(JSON.stringify(out));
await model.dispose();
await llama.dispose();
