// Validates KEDA documents against KEDA's CRD schema (keda.sh/v1alpha1, from the
// @kubernetes-models/keda package) offline.
//
//   node validate-keda.mjs < documents.json
//
// Input: JSON on stdin, one document or an array of documents (the tests convert YAML to
// JSON, so no YAML parser is needed here). Each document must be a ScaledObject or a
// TriggerAuthentication of keda.sh/v1alpha1: any other kind is an error, never skipped.
// Output: one line "ok <Kind>/<name>" per valid document on stdout. Exit status 0 when
// every document is valid; 1 with "invalid <Kind>/<name>: <error>" lines on stderr
// otherwise; 2 for unreadable input.
import { readFileSync } from "node:fs";
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";

const MODELS = { ScaledObject, TriggerAuthentication };

let documents;
try {
  const parsed = JSON.parse(readFileSync(0, "utf8"));
  documents = Array.isArray(parsed) ? parsed : [parsed];
} catch (err) {
  console.error(`cannot read JSON documents from stdin: ${err.message}`);
  process.exit(2);
}
if (documents.length === 0) {
  console.error("no documents on stdin");
  process.exit(2);
}

let failures = 0;
for (const doc of documents) {
  const kind = doc?.kind;
  const name = `${kind}/${doc?.metadata?.name ?? "<unnamed>"}`;
  const Model = MODELS[kind];
  try {
    if (doc?.apiVersion !== "keda.sh/v1alpha1" || Model === undefined) {
      throw new Error(
        `not a keda.sh/v1alpha1 ScaledObject or TriggerAuthentication (apiVersion ` +
          `${JSON.stringify(doc?.apiVersion)}, kind ${JSON.stringify(kind)})`,
      );
    }
    new Model(doc).validate();
    console.log(`ok ${name}`);
  } catch (err) {
    failures += 1;
    const detail = err.errors ? JSON.stringify(err.errors) : "";
    console.error(`invalid ${name}: ${err.message} ${detail}`.trim());
  }
}
process.exit(failures === 0 ? 0 : 1);
