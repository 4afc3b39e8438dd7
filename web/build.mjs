// Builds the committed browser artifacts from source, deterministically (same inputs, same bytes):
//   clients/js/dist/rookery.js   the SDK as one ES module (served at /sdk/rookery.js)
//   web/dist/{index.html,app.js,app.css}   the web chat app (served at /, /app.js, /app.css)
// Run with `npm run build`; `web/check-dist.sh` fails when the committed files differ from a fresh build.
// A file whose bytes do not change is not rewritten, so its mtime (and cargo's rebuild check) stays put.
import { build } from 'esbuild';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const common = { bundle: true, format: 'esm', target: 'es2020', legalComments: 'none', logLevel: 'warning', charset: 'utf8', write: false };

function put(file, bytes) {
  mkdirSync(dirname(file), { recursive: true });
  if (existsSync(file) && Buffer.compare(readFileSync(file), Buffer.from(bytes)) === 0) return;
  writeFileSync(file, bytes);
  console.log(`built ${file.slice(root.length + 1)}`);
}

async function bundle(entry, outfile, extra = {}) {
  const result = await build({ ...common, ...extra, entryPoints: [join(root, entry)], outfile: join(root, outfile) });
  for (const f of result.outputFiles) put(f.path, f.contents);
}

await bundle('clients/js/src/index.ts', 'clients/js/dist/rookery.js', {
  banner: { js: '// Rookery JavaScript client library (ES module). Built from clients/js/src by `npm run build`.' },
});
await bundle('web/src/app.ts', 'web/dist/app.js', { minify: true });
await bundle('web/src/app.css', 'web/dist/app.css', { minify: true });
put(join(root, 'web/dist/index.html'), readFileSync(join(root, 'web/src/index.html')));
