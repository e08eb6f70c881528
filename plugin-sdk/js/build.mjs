#!/usr/bin/env node
// Builds a weir plugin written in JavaScript into a WebAssembly component.
//
//   node build.mjs plugin.js -o plugin.wasm [--world transformer|aggregator] [--wit DIR]
//
// Steps: bundle the plugin and this kit into one ES module with rolldown
// (`weir:plugin/*` imports stay imports), then componentize it with the
// QuickJS engine (componentize-qjs, the `--backend qjs` of jco) in its
// synchronous flavour and with WASI stubbed out: the component imports only
// `weir:plugin/host`. Both tools come with `npm install @bytecodealliance/jco`.
//
// Why not `jco componentize`: the jco 1.35 command line cannot read a WIT
// path (its bundled WASI shim fails with "os error 44").

import { readFile, writeFile, stat } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, resolve, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const kitDir = dirname(fileURLToPath(import.meta.url));

function usage(message) {
  if (message) console.error(`error: ${message}`);
  console.error("usage: node build.mjs <plugin.js> -o <plugin.wasm> [--world transformer|aggregator] [--wit <dir>]");
  process.exit(2);
}

const args = process.argv.slice(2);
let entry, out, world, wit;
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "-o" || a === "--out") out = args[++i];
  else if (a === "--world") world = args[++i];
  else if (a === "--wit") wit = args[++i];
  else if (a.startsWith("-")) usage(`unknown option ${a}`);
  else if (!entry) entry = a;
  else usage(`unexpected argument ${a}`);
}
if (!entry || !out) usage();

async function exists(path) {
  return stat(path).then(() => true, () => false);
}

// The WIT package: --wit, else the kit's own copy, else the repository's.
if (!wit) {
  for (const candidate of [join(kitDir, "wit"), join(kitDir, "../../wit")]) {
    if (await exists(join(candidate, "plugin.wit"))) { wit = candidate; break; }
  }
  if (!wit) usage("no WIT package found next to the kit; pass --wit <dir>");
}

// Tools are resolved from the project (its node_modules), then from here.
function load(name) {
  for (const base of [join(process.cwd(), "package.json"), join(kitDir, "package.json")]) {
    try {
      const require = createRequire(base);
      const main = require.resolve(name);
      return import(pathToFileURL(main).href);
    } catch {}
  }
  // jco's own dependencies, when only jco is a direct dependency.
  for (const base of [process.cwd(), kitDir]) {
    try {
      const require = createRequire(join(base, "node_modules/@bytecodealliance/jco/package.json"));
      return import(pathToFileURL(require.resolve(name)).href);
    } catch {}
  }
  usage(`cannot find the npm package ${name}: run \`npm install @bytecodealliance/jco@1.35.0\``);
}

const { rolldown } = await load("rolldown");
const { componentize } = await load("componentize-qjs");

const source = await readFile(entry, "utf8");
if (!world) {
  // An aggregate plugin exports `aggregate`; anything else is a transform.
  world = /export\s+(const|let|var|function)\s+aggregate\b/.test(source) ? "aggregator" : "transformer";
}

const bundle = await rolldown({
  input: resolve(entry),
  external: [/^weir:plugin\//],
  resolve: { alias: { "weir-plugin": join(kitDir, "weir.js") } },
  logLevel: "warn",
});
const { output } = await bundle.generate({ format: "esm" });
await bundle.close();
const code = output[0].code;

const started = Date.now();
const result = await componentize({
  witPath: resolve(wit),
  jsSource: code,
  jsPath: resolve(entry),
  world,
  sync: true,
  stubWasi: true,
});
await writeFile(out, result.component);
console.error(`built ${out} (world ${world}, ${result.component.length} bytes, ${Date.now() - started} ms)`);
