// Builds dist/: ESM and CJS bundles of the client and of the React
// bindings, type declarations (tsc), and dist/corecast.js, the minified
// ES module the server embeds and serves at GET /corecast.js.
//
//   node build.mjs          build into dist/
//   node build.mjs --check  build into a temporary directory and fail when
//                           it differs from the committed dist/ (CI), or
//                           when the core is over its size budget
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { gzipSync } from "node:zlib";

/** The core client, minified and gzipped, must stay within this. */
const BUDGET = 8 * 1024;

// Paths below are relative to this package, wherever it is run from.
const here = new URL(".", import.meta.url).pathname;
process.chdir(here);
const check = process.argv.includes("--check");
const out = check ? mkdtempSync(join(tmpdir(), "corecast-dist-")) : "dist";
if (!check) rmSync(out, { recursive: true, force: true });

// React bindings share the core's module (one Client class, one Room).
const coreExternal = (file) => ({
  name: "core-external",
  setup(b) {
    b.onResolve({ filter: /^\.\/index\.js$/ }, () => ({ path: `./${file}`, external: true }));
  },
});
const common = { absWorkingDir: here, bundle: true, target: "es2020", legalComments: "none", logLevel: "warning" };
await build({ ...common, entryPoints: ["src/index.ts"], format: "esm", outfile: `${out}/index.js` });
await build({ ...common, entryPoints: ["src/index.ts"], format: "cjs", outfile: `${out}/index.cjs` });
for (const [format, ext] of [["esm", "js"], ["cjs", "cjs"]]) {
  await build({
    ...common,
    entryPoints: ["src/react.ts"],
    format,
    outfile: `${out}/react.${ext}`,
    external: ["react"],
    plugins: [coreExternal(`index.${ext}`)],
  });
}
await build({ ...common, entryPoints: ["src/index.ts"], format: "esm", minify: true, outfile: `${out}/corecast.js` });
execFileSync("npx", ["tsc", "-p", "tsconfig.json", "--declarationDir", `${out}/types`], { stdio: "inherit" });

const gz = gzipSync(readFileSync(`${out}/corecast.js`), { level: 9 }).length;
console.log(`core client: ${statSync(`${out}/corecast.js`).size} bytes minified, ${gz} gzipped (budget ${BUDGET})`);
let failed = gz > BUDGET;
if (failed) console.error(`the core client is over its budget: ${gz} > ${BUDGET} bytes gzipped`);

if (check) {
  const files = (dir) =>
    readdirSync(dir, { recursive: true })
      .map(String)
      .filter((f) => statSync(join(dir, f)).isFile())
      .sort();
  const want = files(out);
  const have = files("dist");
  for (const f of new Set([...want, ...have])) {
    const a = want.includes(f) ? readFileSync(join(out, f)) : null;
    const b = have.includes(f) ? readFileSync(join("dist", f)) : null;
    if (!a || !b || !a.equals(b)) {
      console.error(`dist/${f} does not match a fresh build of src/ (run npm run build and commit dist/)`);
      failed = true;
    }
  }
  rmSync(out, { recursive: true, force: true });
  if (!failed) console.log(`dist/ matches a fresh build (${relative(".", "dist")})`);
}
process.exit(failed ? 1 : 0);
