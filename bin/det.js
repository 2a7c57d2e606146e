#!/usr/bin/env node
'use strict';
// Thin launcher: the TypeScript sources are compiled to dist/ by `npm run build` (also run by npm ci/start).
let entry;
try {
  entry = require('../dist/cli/main.js');
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && String(err.message).includes('dist/cli/main')) {
    console.error('det: not built yet: run `npm run build` in ' + require('node:path').resolve(__dirname, '..'));
    process.exit(1);
  }
  throw err;
}
entry.run(process.argv.slice(2));
