// Tokenizes and detokenizes documents with llama.cpp (node-llama-cpp 3.21.1, the GGUF's vocabulary only) and compares
// each with what the engine expects, by SHA-256.
//
//   node tokenize.mjs request.json > result.json
//
// request: { "model": "x.gguf", "docs": "docs.json" (a JSON array of strings),
//            "expect": [[idsSha, textSha], ...] (per document: SHA-256 hex of the engine's ids as little-endian int32,
//                       and of the UTF-8 of the engine's decoding of those ids), "details": 3 }
// result:  { "count", "pre", "model", "mismatches": n, "details": [ { "index", "idsMatch", "textMatch", "ids", "text" } ] }
//   Tokenization is llama_tokenize(text, add_special = false, parse_special = true) — special tokens written in the text
//   are matched, as Hugging Face tokenizers and llama-server's prompts do; decoding is llama.cpp's detokenize of its
//   own ids without special tokens. The first `details` mismatching documents come back whole.
import fs from "node:fs";
import crypto from "node:crypto";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const req = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const docs = JSON.parse(fs.readFileSync(req.docs, "utf8"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: req.model, gpuLayers: 0, vocabOnly: true });
const sha = (buf) => crypto.createHash("sha256").update(buf).digest("hex");
const out = { count: docs.length, model: model.fileInfo.metadata?.tokenizer?.ggml?.model, pre: model.fileInfo.metadata?.tokenizer?.ggml?.pre, mismatches: 0, details: [] };
for (let i = 0; i < docs.length; i++) {
    const ids = Array.from(model.tokenize(docs[i], true));
    const text = model.detokenize(ids, false);
    const idsSha = sha(Buffer.from(new Int32Array(ids).buffer));
    const textSha = sha(Buffer.from(text, "utf8"));
    const [wantIds, wantText] = req.expect[i];
    if (idsSha !== wantIds || textSha !== wantText) {
        out.mismatches++;
        if (out.details.length < (req.details ?? 3))
            out.details.push({ index: i, idsMatch: idsSha === wantIds, textMatch: textSha === wantText, ids, text });
    }
}
process.stdout.write(JSON.stringify(out));
await model.dispose();
await llama.dispose();
