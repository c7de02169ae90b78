// Reference side of the tokenizer parity tests: Hugging Face tokenizers (the Rust library, node bindings) encodes
// and decodes the same documents as Engine.Data's BpeTokenizer.
//
//   node hf_tokenize.mjs <tokenizer.json> <documents.jsonl> <out.jsonl>
//
// documents.jsonl: one JSON string per line. out.jsonl: one line per document, {"ids": [...], "text": "..."}, where
// ids = encode(document, add_special_tokens = false) and text = decode(ids, skip_special_tokens = true).
// Exit status 0 on success; any error is printed on one line and exits 1.
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

async function main() {
  const [tokenizerPath, inputPath, outputPath] = process.argv.slice(2);
  if (!tokenizerPath || !inputPath || !outputPath) {
    throw new Error('usage: node hf_tokenize.mjs <tokenizer.json> <documents.jsonl> <out.jsonl>');
  }
  const { Tokenizer } = require('tokenizers');
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  const documents = readFileSync(inputPath, 'utf8')
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => JSON.parse(line));
  const lines = [];
  const batch = 256;
  for (let i = 0; i < documents.length; i += batch) {
    const encodings = await tokenizer.encodeBatch(documents.slice(i, i + batch), { addSpecialTokens: false });
    const ids = encodings.map((e) => e.getIds());
    const texts = await tokenizer.decodeBatch(ids, true);
    for (let j = 0; j < ids.length; j++) lines.push(JSON.stringify({ ids: ids[j], text: texts[j] }));
  }
  writeFileSync(outputPath, lines.length > 0 ? lines.join('\n') + '\n' : '');
}

main().catch((e) => {
  console.error(`hf_tokenize: ${e && e.message ? e.message : e}`);
  process.exit(1);
});
