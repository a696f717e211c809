// Validates AsyncAPI documents with the AsyncAPI project's parser
// (@asyncapi/parser, pinned in package.json). Prints every diagnostic and
// exits 1 when any is an error, or when the document cannot be parsed.
// Usage: node validate.mjs <document> [...]
//        node validate.mjs --self-test <document>   (broken copies must fail)
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const parser = new Parser();

if (process.argv[2] === '--self-test') {
  // Each broken copy is parsed with the original's path, so its file
  // references resolve as the original's do; each must be refused.
  const path = resolve(process.argv[3]);
  const text = await readFile(path, 'utf8');
  const breakages = {
    'an AsyncAPI 2 action': [/action: "send"/, 'action: "publish"'],
    'a payload file that does not exist': [/\.schema\.json"/, '.missing.json"'],
    'an operation on a channel that does not exist': [/\$ref: "#\/channels\/([^"/]+)"/, '$ref: "#/channels/nowhere"'],
  };
  let wrong = 0;
  for (const [what, [pattern, replacement]] of Object.entries(breakages)) {
    if (!pattern.test(text)) {
      console.log(`self-test: ${what}: the document has nothing to break`);
      wrong++;
      continue;
    }
    const { document, diagnostics } = await parser.parse(text.replace(pattern, replacement), { source: path });
    const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
    if (document && errors.length === 0) {
      console.log(`self-test: ${what}: accepted, but must be refused`);
      wrong++;
    } else {
      console.log(`self-test: ${what}: refused (${errors[0]?.message ?? 'no document'})`);
    }
  }
  process.exit(wrong > 0 ? 1 : 0);
}

let failed = false;
for (const file of process.argv.slice(2)) {
  const path = resolve(file);
  const text = await readFile(path, 'utf8');
  const { document, diagnostics } = await parser.parse(text, { source: path });
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
  for (const d of diagnostics) {
    const level = Object.keys(DiagnosticSeverity).find((k) => DiagnosticSeverity[k] === d.severity);
    console.log(`${file}: ${level} ${d.code} at ${d.path.join('.') || '.'}: ${d.message}`);
  }
  if (!document || errors.length > 0) {
    console.log(`${file}: INVALID (${errors.length} errors)`);
    failed = true;
  } else {
    const channels = document.channels().length;
    const messages = document.messages().length;
    const operations = document.operations().length;
    console.log(`${file}: valid AsyncAPI ${document.version()}: ${channels} channels, ${messages} messages, ${operations} operations`);
  }
}
process.exit(failed ? 1 : 0);
