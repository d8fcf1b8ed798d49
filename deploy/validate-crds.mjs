// Validates Prometheus Operator objects (ServiceMonitor, PrometheusRule)
// with @kubernetes-models/prometheus-operator, whose models carry the
// operator's own CRD schemas. Called by deploy/validate.py:
//   node validate-crds.mjs NODE_MODULES_DIR < [{"where": "...", "doc": {...}}, ...]
// Exits 1 and prints one line per invalid object.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const base = join(modules, "@kubernetes-models", "prometheus-operator");
const load = async (group, version, kind) =>
  (await import(pathToFileURL(join(base, group, version, `${kind}.js`)).href))[kind];

const input = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const { where, doc } of input) {
  const [group, version] = doc.apiVersion.split("/");
  if (group !== "monitoring.coreos.com") {
    console.log(`${where}: ${doc.apiVersion} ${doc.kind} is not a Prometheus Operator kind`);
    failed++;
    continue;
  }
  let Model;
  try {
    Model = await load(group, version, doc.kind);
  } catch (e) {
    console.log(`${where}: no model for ${doc.apiVersion} ${doc.kind}: ${e.message}`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    console.log(`${where}: ${doc.kind} ${doc.metadata?.name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
