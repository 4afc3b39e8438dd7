// Builds the committed browser artifacts from source, deterministically (same inputs, same bytes):
//   clients/js/dist/rookery.js   the SDK as one ES module (served at /sdk/rookery.js)
//   web/dist/{index.html,app.js,app.css}   the web chat app (served at /, /app.js, /app.css)
// Run with `npm run build`; `web/check-dist.sh` fails when the committed files differ from a fresh build.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const common = { bundle: true, format: 'esm', target: 'es2020', legalComments: 'none', logLevel: 'warning', charset: 'utf8' };

await build({
  ...common,
  entryPoints: [join(root, 'clients/js/src/index.ts')],
  outfile: join(root, 'clients/js/dist/rookery.js'),
  banner: { js: '// Rookery JavaScript client library (ES module). Built from clients/js/src by `npm run build`.' },
});
await build({
  ...common,
  entryPoints: [join(root, 'web/src/app.ts')],
  outfile: join(root, 'web/dist/app.js'),
  minify: true,
});
await build({
  ...common,
  entryPoints: [join(root, 'web/src/app.css')],
  outfile: join(root, 'web/dist/app.css'),
  minify: true,
});
mkdirSync(join(root, 'web/dist'), { recursive: true });
copyFileSync(join(root, 'web/src/index.html'), join(root, 'web/dist/index.html'));
