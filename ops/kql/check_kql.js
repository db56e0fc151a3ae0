#!/usr/bin/env node
// Checks KQL with Microsoft's own parser and semantic analyser (Kusto.Language, npm @kusto/language-service-next)
// against the Application Insights schema in appinsights_schema.json.
//
//   node ops/kql/check_kql.js                     # ops/queries/*.kql and ops/workbook.json
//   node ops/kql/check_kql.js FILE.kql FILE.json  # .kql: the file as it is; .json: every log query of a workbook
//   node ops/kql/check_kql.js --json ...          # machine-readable report (used by tests/test_ops_queries.py)
//
// A .kql file is analysed as it is (it must also work pasted into Logs, where {UserId} stays literal text).
// A workbook query is analysed after substituting its {Parameter} references the way the workbook does (see
// substitutions()), once with the parameters' default values and once with sample values.
// Every query is analysed against each schema variant (classic types / workspace-based types).
// Exit status: 0 no error diagnostics, 1 at least one, 2 the check itself could not run.
'use strict';

const fs = require('fs');
const path = require('path');

const HERE = __dirname;
const OPS = path.dirname(HERE);
const ROOT = path.dirname(OPS);

function loadKusto() {
  // Bridge.NET output: bridge.js defines the runtime, Kusto.Language.Bridge.js the library; both set globals.
  require('@kusto/language-service-next/bridge.min.js');
  require('@kusto/language-service-next/Kusto.Language.Bridge.min.js');
  const version = require('@kusto/language-service-next/package.json').version;
  return { Kusto: global.Kusto, Bridge: global.Bridge, version };
}

// ------------------------------------------------------------------------------------------------ schema
function columnsFor(schema, table, variant) {
  const cols = [];
  for (const [name, spec] of Object.entries({ ...schema.common, ...schema.tables[table] })) {
    const type = typeof spec === 'string' ? spec : spec[variant];
    if (type === undefined) throw new Error(`${table}.${name}: no type for variant ${variant}`);
    if (type !== null) cols.push(`['${name}']:${type}`);
  }
  return `(${cols.join(', ')})`;
}

function globalsFor(K, schema, variant) {
  const S = K.Kusto.Language.Symbols;
  const tables = Object.keys(schema.tables).map(
    (t) => new S.TableSymbol.$ctor7(t, columnsFor(schema, t, variant), null));
  const db = new S.DatabaseSymbol.$ctor2('appinsights', null, tables);
  return K.Kusto.Language.GlobalState.Default.WithDatabase(db);
}

// ------------------------------------------------------------------------------------------------ workbook
function walkItems(items, out) {
  for (const item of items || []) {
    if (item.type === 9) out.params.push(...(item.content.parameters || []));
    if (item.type === 3 && item.content && item.content.queryType === 0) out.queries.push(item);
    if (item.type === 12 && item.content) walkItems(item.content.items, out);  // group
  }
  return out;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');
function kqlDatetime(d) {
  return `datetime(${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}T` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.000Z)`;
}
function kqlTimespan(ms) {
  for (const [unit, size] of [['d', 86400000], ['h', 3600000], ['m', 60000], ['s', 1000]]) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

// What the workbook puts in place of {Name} / {Name:format} in a log query, per parameter type:
// time range (4): {P}, {P:value}, {P:query} -> "> ago(4h)" (used as `| where timestamp {P}`),
//   {P:start} / {P:end} -> datetime(...), {P:grain} -> a timespan, {P:label} -> "Last 4 hours" (text);
// text (1) and drop-down (2) with a single value: the raw value, unquoted (the query supplies the quotes).
// mode "default": the value saved in the workbook; "sample": a made-up non-empty value.
function substitutions(params, mode) {
  const subs = {};
  const end = new Date(Date.UTC(2024, 0, 15, 12, 0, 0));
  for (const p of params) {
    if (p.type === 4) {
      const ms = (p.value && p.value.durationMs) || 86400000;
      const start = new Date(end.getTime() - ms);
      const ago = `> ago(${kqlTimespan(ms)})`;
      Object.assign(subs, {
        [p.name]: ago, [`${p.name}:value`]: ago, [`${p.name}:query`]: ago,
        [`${p.name}:start`]: kqlDatetime(start), [`${p.name}:end`]: kqlDatetime(end),
        [`${p.name}:grain`]: kqlTimespan(Math.max(60000, Math.round(ms / 50 / 60000) * 60000)),
        [`${p.name}:label`]: `Last ${kqlTimespan(ms)}`,
      });
    } else if (p.type === 1 || (p.type === 2 && !p.multiSelect)) {
      const saved = typeof p.value === 'string' ? p.value : '';
      subs[p.name] = mode === 'default' ? saved : `sample-${p.name.toLowerCase()}-1042`;
    } else {
      throw new Error(`parameter ${p.name}: type ${p.type} is not supported by check_kql.js (add it to substitutions())`);
    }
  }
  return subs;
}

function substitute(query, subs) {
  // Workbooks replace only declared parameters; anything else in braces (e.g. a dynamic literal) stays.
  return query.replace(/\{(\w+(?::\w+)?)\}/g, (whole, key) => (key in subs ? subs[key] : whole));
}

// ------------------------------------------------------------------------------------------------ analysis
function lineCol(text, offset) {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return { line, column: offset - before.lastIndexOf('\n') };
}

function analyse(K, globalsByVariant, unit) {
  const found = new Map();
  for (const [variant, globals] of Object.entries(globalsByVariant)) {
    const code = K.Kusto.Language.KustoCode.ParseAndAnalyze(unit.text, globals);
    for (const d of K.Bridge.toArray(code.GetDiagnostics())) {
      const key = `${d.Start}|${d.Length}|${d.Code}|${d.Message}`;
      if (found.has(key)) { found.get(key).schemas.push(variant); continue; }
      const { line, column } = lineCol(unit.text, d.Start);
      const lineText = unit.text.split('\n')[line - 1] || '';
      found.set(key, {
        source: unit.source, item: unit.item || null, parameters: unit.parameters || null,
        severity: String(d.Severity), code: d.Code, message: d.Message,
        start: d.Start, length: d.Length, line, column, lineText, schemas: [variant],
      });
    }
  }
  return [...found.values()];
}

function unitsFor(file) {
  const rel = path.relative(ROOT, path.resolve(file)) || file;
  const text = fs.readFileSync(file, 'utf8');
  if (!file.endsWith('.json')) return [{ source: rel, text }];
  const wb = walkItems(JSON.parse(text).items, { params: [], queries: [] });
  const units = [];
  for (const item of wb.queries) {
    const query = item.content.query;
    const uses = /\{\w+(?::\w+)?\}/.test(query);
    for (const mode of uses ? ['default', 'sample'] : ['default']) {
      units.push({ source: rel, item: item.name, parameters: uses ? mode : null,
                   text: substitute(query, substitutions(wb.params, mode)) });
    }
  }
  if (units.length === 0) throw new Error(`${rel}: no log query items found`);
  return units;
}

function main(argv) {
  const json = argv.includes('--json');
  let files = argv.filter((a) => a !== '--json');
  if (files.length === 0) {
    const qdir = path.join(OPS, 'queries');
    files = [...fs.readdirSync(qdir).filter((f) => f.endsWith('.kql')).sort().map((f) => path.join(qdir, f)),
             path.join(OPS, 'workbook.json')];
  }
  const started = Date.now();
  const K = loadKusto();
  const schema = JSON.parse(fs.readFileSync(path.join(HERE, 'appinsights_schema.json'), 'utf8'));
  const globalsByVariant = Object.fromEntries(schema.variants.map((v) => [v, globalsFor(K, schema, v)]));
  const units = files.flatMap(unitsFor);
  const diagnostics = units.flatMap((u) => analyse(K, globalsByVariant, u));
  const errors = diagnostics.filter((d) => d.severity === 'Error');
  const report = {
    package: '@kusto/language-service-next', version: K.version, schemas: schema.variants,
    checked: units.map((u) => ({ source: u.source, item: u.item || null, parameters: u.parameters || null })),
    diagnostics, errors: errors.length, ms: Date.now() - started,
  };
  if (json) {
    process.stdout.write(JSON.stringify(report) + '\n');
  } else {
    for (const d of diagnostics) {
      const where = d.item ? `${d.source} [${d.item}${d.parameters ? `, ${d.parameters} parameters` : ''}]` : d.source;
      console.log(`${where}:${d.line}:${d.column}: ${d.severity.toLowerCase()} ${d.code}: ${d.message}` +
                  ` (schema: ${d.schemas.join(', ')})\n    ${d.lineText}\n    ${' '.repeat(d.column - 1)}^`);
    }
    console.log(`${units.length} queries from ${files.length} files, Kusto.Language ${K.version}: ` +
                `${errors.length} errors, ${diagnostics.length - errors.length} other diagnostics (${report.ms} ms)`);
  }
  return errors.length ? 1 : 0;
}

if (require.main === module) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (err) {
    console.error(`check_kql.js: ${err && err.stack ? err.stack : err}`);
    process.exitCode = 2;
  }
}
