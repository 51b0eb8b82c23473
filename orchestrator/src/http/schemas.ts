import { Type, type TSchema } from '@sinclair/typebox';
import { PERMISSION_FLAGS } from '../domain/permissions.js';

// Reusable schemas: they validate requests and are embedded as-is in the OpenAPI 3.1 document
// (TypeBox schemas are JSON Schema 2020-12, which OpenAPI 3.1 uses).

/** Names of workspaces, areas, pools, templates, networks and VMs: DNS-label-like, 1–63 chars. */
export const Name = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$',
  description: 'letters, digits, "_", "." and "-"; starts with a letter or digit; at most 63 characters',
});
export const Username = Type.String({
  pattern: '^[a-z0-9][a-z0-9_.-]{2,31}$',
  description: 'lower-case letters, digits, "_", "." and "-"; 3–32 characters',
});
export const Email = Type.String({
  maxLength: 254,
  pattern: '^[^\\s@]+@[^\\s@]+\\.[^\\s@]+$',
});
export const Password = Type.String({ minLength: 1, maxLength: 256, writeOnly: true });
export const Uuid = Type.String({
  pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$',
});
export const Description = Type.String({ maxLength: 1000 });
export const Timestamp = Type.String({ format: 'date-time' });

/** All nine flags, each required (responses). */
export const Permissions = Type.Object(
  Object.fromEntries(PERMISSION_FLAGS.map((f) => [f, Type.Boolean()])) as Record<string, ReturnType<typeof Type.Boolean>>,
  { additionalProperties: false },
);
/** Any subset of the flags (requests). */
export const PermissionsPatch = Type.Partial(Permissions, { additionalProperties: false });

/** Pagination of every list: at most `limit` items after the name `after`. */
export const ListQuery = Type.Object(
  {
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
    after: Type.Optional(Type.String({ maxLength: 128 })),
  },
  { additionalProperties: false },
);

/** A page of a list: items and the cursor of the next page (null on the last one). */
export function Page<T extends TSchema>(item: T) {
  return Type.Object({ items: Type.Array(item), nextCursor: Type.Union([Type.String(), Type.Null()]) });
}

export const ErrorSchema = Type.Object({
  error: Type.Object({
    code: Type.String(),
    message: Type.String(),
    details: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    requestId: Type.Optional(Type.String()),
  }),
});

export const WsParams = Type.Object({ ws: Name }, { additionalProperties: false });
export const NameParams = Type.Object({ name: Name }, { additionalProperties: false });
