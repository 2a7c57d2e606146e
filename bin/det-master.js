#!/usr/bin/env node
'use strict';
// Thin launcher: the TypeScript sources are compiled to dist/ by `npm run build` (also run by npm ci/start).
let entry;
try {
  entry = require('../dist/master/main.js');
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && String(err.message).includes('dist/master/main')) {
    console.error('det-master: not built yet: run `npm run build` in ' + require('node:path').resolve(__dirname, '..'));
    process.exit(1);
  }
  throw err;
}
entry.run(process.argv.slice(2));
