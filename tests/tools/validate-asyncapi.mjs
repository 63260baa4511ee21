// Parse AsyncAPI documents with the real @asyncapi/parser and report what it found.
//
// Usage: node validate-asyncapi.mjs FILE [FILE...]
//
// Relative $refs (e.g. ./input-record.schema.json) are resolved from each FILE's folder on
// the file system (the parser's file resolver, given the document's absolute path as
// source). Per FILE it prints "file <path>", one line per diagnostic
// ("<severity> <code> <path>: <message>"), then
//   summary channels=N operations=N messages=N errors=N warnings=N infos=N hints=N
// and, per message, "message <id> payload=<schema> headers=<schema>" (see describe()) so
// that callers can check the parser really resolved the referenced schemas. Several files
// share one start of Node and of the parser.
//
// Exit status: 0 when every FILE parsed with no error-severity diagnostic, 1 otherwise
// (also when the parser returned no document for one), 2 on a usage error.
//
// Node finds @asyncapi/parser next to this script (tests/tools/node_modules), in the
// working directory's node_modules, or in NODE_PATH.
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import path from "node:path";
import process from "node:process";

// An ES module ignores NODE_PATH; a require() anchored at the working directory or at this
// script's folder finds tests/tools/node_modules whichever way the script is run.
function loadParser() {
  const anchors = [path.join(process.cwd(), "noop.js"), import.meta.url];
  for (const dir of (process.env.NODE_PATH || "").split(path.delimiter).filter(Boolean)) {
    anchors.push(path.join(dir, "..", "noop.js"));
  }
  let lastError;
  for (const anchor of anchors) {
    try {
      return createRequire(anchor)("@asyncapi/parser");
    } catch (error) {
      lastError = error;
    }
  }
  throw lastError;
}

// "<type>[<required properties>]" of a parsed schema, "-" when there is none: enough for a
// caller to see that a $ref'd file was really loaded (its required list is in that file).
function describe(schema) {
  if (!schema) return "-";
  const type = [].concat(schema.type() ?? "any").join("|");
  const required = schema.required() ?? [];
  return required.length ? `${type}[${required.join(",")}]` : type;
}

const SEVERITY = ["error", "warning", "info", "hint"];

async function check(parser, fromFile, file) {
  console.log(`file ${file}`);
  const { document, diagnostics } = await fromFile(parser, file).parse();
  const counts = { error: 0, warning: 0, info: 0, hint: 0 };
  for (const d of diagnostics) {
    const severity = SEVERITY[d.severity] ?? `severity${d.severity}`;
    counts[severity] = (counts[severity] ?? 0) + 1;
    const where = (d.path || []).join(".") || "(document)";
    console.log(`${severity} ${d.code} ${where}: ${d.message}`);
  }
  const tail = `errors=${counts.error} warnings=${counts.warning} infos=${counts.info} `
    + `hints=${counts.hint}`;
  if (document === undefined) {
    console.log("no document: the parser could not build one");
    console.log(`summary channels=0 operations=0 messages=0 ${tail}`);
    return false;
  }
  const messages = document.allMessages().all();
  console.log(`summary channels=${document.channels().length} `
    + `operations=${document.operations().length} messages=${messages.length} ${tail}`);
  for (const message of messages) {
    console.log(`message ${message.id()} payload=${describe(message.payload())} `
      + `headers=${describe(message.headers())}`);
  }
  return counts.error === 0;
}

async function main(argv) {
  if (argv.length === 0) {
    console.error("usage: node validate-asyncapi.mjs ASYNCAPI_FILE [ASYNCAPI_FILE...]");
    return 2;
  }
  const files = argv.map((f) => path.resolve(f));
  for (const file of files) {
    if (!existsSync(file)) {
      console.error(`no such file: ${file}`);
      return 2;
    }
  }
  const { Parser, fromFile } = loadParser();
  const parser = new Parser();
  let ok = true;
  for (const file of files) {
    ok = (await check(parser, fromFile, file)) && ok;
  }
  return ok ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error && error.stack ? error.stack : String(error));
    process.exit(1);
  },
);
