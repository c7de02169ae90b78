// Runs GGUF files through llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU binaries) on fixed token ids.
//
//   node logits.mjs request.json > result.json
//
// request: { "models": ["a.gguf", ...], "sequences": [[ids], ...], "mode": "probs" | "nll" | "generate",
//            "detokenize": [ids] (optional), "tokenize": "text" or ["text", ...] (optional), "threads": 2,
//            "kvCache": "F32" | "F16" (default F32: llama.cpp's own default F16 cache rounds keys and values) }
// result:  { "models": [ { "path", "vocab", "sequences": [ ... ], "text"?, "tokens"? } ] }
//   mode "probs": per sequence, per position, the full next-token distribution (vocab floats) after that position;
//   mode "nll":   per sequence { "nll": sum of -ln p(ids[t+1] | ids[..t]), "count" }.
//   mode "generate": per sequence (a prompt) the "maxTokens" (default 16) tokens llama.cpp's own sampler generates
//                 after it at temperature 0 (greedy), as a list of ids.
// Probabilities are llama.cpp's softmax of its raw logits (greedy sampler: no temperature, top-k or penalties), so
// log-probabilities equal the logits minus their logsumexp.
import fs from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const req = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const mode = req.mode ?? "probs";
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const out = { models: [] };
const longest = Math.max(...req.sequences.map((s) => s.length)) + (req.mode === "generate" ? (req.maxTokens ?? 16) : 0);
for (const path of req.models) {
    const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
    const context = await model.createContext({
        contextSize: Math.max(64, longest + 1), batchSize: Math.max(64, longest), sequences: 1, threads: req.threads ?? 2,
        flashAttention: false,
        experimentalKvCacheKeyType: req.kvCache ?? "F32",
        experimentalKvCacheValueType: req.kvCache ?? "F32",
    });
    const seq = context.getSequence();
    const result = { path, vocab: null, trainContextSize: model.trainContextSize, sequences: [] };
    for (const ids of req.sequences) {
        await seq.clearHistory();
        if (mode === "generate") {
            const tokens = [];
            for await (const token of seq.evaluate(ids, { temperature: 0 })) {
                tokens.push(token);
                if (tokens.length >= (req.maxTokens ?? 16)) break;
            }
            result.sequences.push(tokens);
            continue;
        }
        const input = ids.map((t, i) => (mode === "probs" || i + 1 < ids.length) ? [t, { generateNext: { probabilities: true } }] : t);
        const res = await seq.controlledEvaluate(input);
        if (mode === "probs") {
            const rows = [];
            for (let i = 0; i < ids.length; i++) {
                const map = res[i]?.next?.probabilities;
                if (map == null) throw new Error(`no probabilities at position ${i}`);
                result.vocab ??= map.size;
                const row = new Array(map.size).fill(0);
                for (const [tok, p] of map) row[tok] = p;
                rows.push(row);
            }
            result.sequences.push(rows);
        } else {
            let nll = 0, count = 0;
            for (let i = 0; i + 1 < ids.length; i++) {
                const p = res[i]?.next?.probabilities?.get(ids[i + 1]) ?? 0;
                nll += -Math.log(p);
                count++;
            }
            result.sequences.push({ nll, count });
        }
    }
    if (req.detokenize) result.text = model.detokenize(req.detokenize);
    if (req.tokenize != null)
        result.tokens = Array.isArray(req.tokenize) ? req.tokenize.map((t) => Array.from(model.tokenize(t))) : Array.from(model.tokenize(req.tokenize));
    out.models.push(result);
    await context.dispose();
    await model.dispose();
}
process.stdout.write(JSON.stringify(out));
await llama.dispose();
