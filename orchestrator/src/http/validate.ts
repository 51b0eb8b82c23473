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
  const input = convert ? Value.Convert(schema, value) : value;
  const c = checker(schema);
  if (c.Check(input)) return Value.Default(schema, structuredClone(input)) as T;
  const problems = [...c.Errors(input)].slice(0, 10).map((e) => ({ path: e.path || '/', message: e.message }));
  throw new ValidationError(`invalid ${where}`, { in: where, problems });
}
