import { Type } from '@sinclair/typebox';
import type { Services } from '../../app/services.js';
import * as templates from '../../app/templates.js';
import { route, type RouteSpec } from '../route.js';
import { Description, Name, NameParams, Timestamp, Uuid } from '../schemas.js';
import { deleteRoute, readRoutes } from './crud.js';

/** An absolute path on the hosts, without `..` or control characters. */
const HostPath = Type.String({ minLength: 2, maxLength: 1024, pattern: '^/(?!.*(^|/)\\.\\.(/|$))[\\x21-\\x7e]+$' });

const TemplateFields = {
  name: Name,
  os: Type.String({ minLength: 1, maxLength: 64 }),
  description: Description,
  cpu: Type.Integer({ minimum: 1, maximum: 256 }),
  ramMb: Type.Integer({ minimum: 64, maximum: 4 * 1024 * 1024 }),
  diskGb: Type.Integer({ minimum: 1, maximum: 65536 }),
  image: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$', description: 'volume name of the base image in the area\'s pools' }),
  boot: Type.Optional(
    Type.Union([
      Type.Object(
        {
          kernel: HostPath,
          initrd: HostPath,
          cmdline: Type.Optional(Type.String({ maxLength: 1024, pattern: '^[\\x20-\\x7e]*$', description: 'kernel command line (printable ASCII)' })),
        },
        { additionalProperties: false, description: 'direct kernel boot, for images without a bootloader: files present at these paths on every host' },
      ),
      Type.Null(),
    ]),
  ),
};
const TemplateSchema = Type.Object({
  id: Uuid,
  ...TemplateFields,
  boot: Type.Union([Type.Object({ kernel: Type.String(), initrd: Type.String(), cmdline: Type.String() }), Type.Null()]),
  createdAt: Timestamp,
});

/** VM templates: users read them, admins manage them. */
export function templateRoutes(s: Services): RouteSpec[] {
  return [
    ...readRoutes('templates', 'template', 'user', TemplateSchema, (c, q) => templates.listTemplates(s, c, q), (c, name) => templates.getTemplate(s, c, name)),
    route({
      method: 'post',
      path: '/templates',
      operationId: 'createTemplate',
      summary: 'Create a VM template',
      tag: 'templates',
      access: 'admin',
      body: Type.Object({ ...TemplateFields, description: Type.Optional(Description) }, { additionalProperties: false }),
      response: { status: 201, description: 'the template', schema: TemplateSchema },
      errors: [409],
      handler: ({ caller, body }) => templates.createTemplate(s, caller, body),
    }),
    route({
      method: 'patch',
      path: '/templates/{name}',
      operationId: 'updateTemplate',
      summary: 'Change a template (existing VMs keep their size)',
      tag: 'templates',
      access: 'admin',
      params: NameParams,
      body: Type.Partial(Type.Object(TemplateFields), { additionalProperties: false, minProperties: 1 }),
      response: { status: 200, description: 'the template', schema: TemplateSchema },
      errors: [404, 409],
      handler: ({ caller, params, body }) => templates.updateTemplate(s, caller, params.name, body),
    }),
    deleteRoute('templates', 'template', (c, name) => templates.deleteTemplate(s, c, name)),
  ];
}
