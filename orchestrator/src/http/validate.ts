import type { TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { Value } from '@sinclair/typebox/value';
import { ValidationError } from '@kloudak/common';

const compiled = new WeakMap<TSchema, TypeCheck<TSchema>>();

function checker(schema: TSchema): TypeCheck<TSchema> {
  let c = compiled.get(schema);
  if (!c) {
    c = TypeCompiler.Compile(schema);
    compiled.set(schema, c);
  }
  return c;
}

/**
 * Validate `value` against `schema`. Strings from the URL may be converted first (query and path
 * values are always strings); bodies are taken as sent. Defaults are applied after a successful
 * check. Throws a ValidationError listing at most ten problems with their JSON pointers.
 */
export function validate<T>(schema: TSchema, value: unknown, where: 'body' | 'query' | 'params', convert: boolean): T {
  const nul = findNul(value, '');
  if (nul !== null) {
    throw new ValidationError(`invalid ${where}`, { in: where, problems: [{ path: nul || '/', message: 'must not contain the NUL character nor be nested deeper than 64 levels' }] });
  }
  const input = convert ? Value.Convert(schema, value) : value;
  const c = checker(schema);
  if (c.Check(input)) return Value.Default(schema, structuredClone(input)) as T;
  const problems = [...c.Errors(input)].slice(0, 10).map((e) => ({ path: e.path || '/', message: e.message }));
  throw new ValidationError(`invalid ${where}`, { in: where, problems });
}

/** Deepest nesting of arrays and objects accepted anywhere in a request. */
export const MAX_DEPTH = 64;

/**
 * JSON pointer of the first string (or key) holding U+0000, or of the first value nested deeper
 * than MAX_DEPTH; null when there is none. PostgreSQL cannot store NUL in text, so such input is
 * refused here as bad input rather than failing in the database. Iterative, so a body nested
 * 100,000 levels deep costs a loop, not the call stack.
 */
function findNul(root: unknown, rootPath: string): string | null {
  const todo: Array<{ v: unknown; path: string; depth: number }> = [{ v: root, path: rootPath, depth: 0 }];
  while (todo.length > 0) {
    const { v, path, depth } = todo.pop()!;
    if (typeof v === 'string') {
      if (v.includes('\u0000')) return path;
      continue;
    }
    if (v === null || typeof v !== 'object') continue;
    if (depth >= MAX_DEPTH) return path;
    const entries: Array<[string, unknown]> = Array.isArray(v) ? v.map((x, i) => [String(i), x]) : Object.entries(v);
    for (const [k, x] of entries) {
      if (k.includes('\u0000')) return `${path}/${k.split('\u0000').join('')}`;
      todo.push({ v: x, path: `${path}/${k}`, depth: depth + 1 });
    }
  }
  return null;
}
