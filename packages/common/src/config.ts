import { readFileSync } from 'node:fs';
import { type Static, type TObject } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { ConfigError } from './errors.js';

/** Where configuration values come from, lowest precedence first. */
export interface ConfigSources {
  /** Parsed config file contents (JSON), if any. */
  file?: Record<string, unknown>;
  /** Environment values already mapped to config keys. */
  env?: Record<string, unknown>;
  /** Command-line flags already mapped to config keys. */
  flags?: Record<string, unknown>;
}

/**
 * Merge defaults → file → env → flags, convert strings to the schema's types, validate once
 * and freeze. Unknown keys are refused so a typo in a file is not silently ignored.
 */
export function loadConfig<T extends TObject>(schema: T, sources: ConfigSources): Readonly<Static<T>> {
  const merged: Record<string, unknown> = {};
  for (const layer of [sources.file, sources.env, sources.flags]) {
    if (!layer) continue;
    for (const [k, v] of Object.entries(layer)) if (v !== undefined && v !== '') merged[k] = v;
  }
  const withDefaults = Value.Default(schema, Value.Convert(schema, merged));
  const errors = [...Value.Errors(schema, withDefaults)];
  if (errors.length > 0) {
    const lines = errors.slice(0, 10).map((e) => `${e.path || '/'}: ${e.message}`);
    throw new ConfigError(`invalid configuration:\n  ${lines.join('\n  ')}`);
  }
  return Object.freeze(withDefaults as Static<T>);
}

/** Map environment variable names to config keys, dropping unset ones. */
export function envLayer(env: NodeJS.ProcessEnv, names: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [envName, key] of Object.entries(names)) {
    const v = env[envName];
    if (v !== undefined && v !== '') out[key] = v;
  }
  return out;
}

/** Parse `--key=value` / `--key value` flags into config keys through a name map. */
export function flagLayer(argv: readonly string[], names: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === undefined || !arg.startsWith('--')) continue;
    const eq = arg.indexOf('=');
    const flag = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
    const key = names[flag];
    if (key === undefined) continue;
    if (eq !== -1) out[key] = arg.slice(eq + 1);
    else if (i + 1 < argv.length) out[key] = argv[++i];
  }
  return out;
}

/** Read a JSON config file; a missing optional file yields an empty layer. */
export function fileLayer(path: string | undefined, required: boolean): Record<string, unknown> {
  if (!path) return {};
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new ConfigError(`config file ${path} must hold a JSON object`);
    }
    return parsed as Record<string, unknown>;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`config file ${path} is not valid JSON: ${(err as Error).message}`);
  }
}
