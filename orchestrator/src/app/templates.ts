// VM templates: users read them, admins manage them.
import { NotFoundError } from '@kloudak/common';
import {
  createTemplate as insertTemplate,
  deleteTemplate as removeTemplate,
  listTemplates as templateRows,
  templateByName,
  updateTemplate as writeTemplate,
  type TemplateFields,
  type TemplateRow,
} from '../store/templates.js';
import { infraEvent, withEvents } from './events.js';
import { DEFAULT_LIMIT, page, type ListInput, type Page } from './paging.js';
import { admin, signedIn, type Caller } from './principal.js';
import type { Services } from './services.js';

/** A template as the API shows it. */
export interface TemplateView {
  id: string;
  name: string;
  os: string;
  description: string;
  cpu: number;
  ramMb: number;
  diskGb: number;
  image: string;
  /** Direct kernel boot (images without a bootloader), or null to boot the disk. */
  boot: TemplateBoot | null;
  createdAt: string;
}

/** A template's direct kernel boot: paths of the kernel and initrd on every host, and the command line. */
export interface TemplateBoot {
  kernel: string;
  initrd: string;
  cmdline: string;
}

/** What the API takes for a template: its fields, with `boot` in place of the three columns. */
export type TemplateInput = Omit<TemplateFields, 'bootKernel' | 'bootInitrd' | 'bootCmdline'> & { boot?: (Omit<TemplateBoot, 'cmdline'> & { cmdline?: string }) | null };

function view(t: TemplateRow): TemplateView {
  const boot = t.bootKernel && t.bootInitrd ? { kernel: t.bootKernel, initrd: t.bootInitrd, cmdline: t.bootCmdline ?? '' } : null;
  return { id: t.id, name: t.name, os: t.os, description: t.description, cpu: t.cpu, ramMb: t.ramMb, diskGb: t.diskGb, image: t.image, boot, createdAt: t.createdAt.toISOString() };
}

/** The columns of `boot` (undefined: leave them; null: boot the disk). */
function bootColumns(boot: TemplateInput['boot']): Partial<Pick<TemplateFields, 'bootKernel' | 'bootInitrd' | 'bootCmdline'>> {
  if (boot === undefined) return {};
  if (boot === null) return { bootKernel: null, bootInitrd: null, bootCmdline: null };
  return { bootKernel: boot.kernel, bootInitrd: boot.initrd, bootCmdline: boot.cmdline ?? '' };
}

async function templateNamed(s: Services, name: string): Promise<TemplateRow> {
  const t = await templateByName(s.db.client, name);
  if (!t) throw new NotFoundError('template', name);
  return t;
}

export async function listTemplates(s: Services, c: Caller, q: ListInput): Promise<Page<TemplateView>> {
  signedIn(c);
  const limit = q.limit ?? DEFAULT_LIMIT;
  return page(await templateRows(s.db, { ...(q.after ? { after: q.after } : {}), take: limit + 1 }), limit, (r) => r.name, view);
}

export async function getTemplate(s: Services, c: Caller, name: string): Promise<TemplateView> {
  signedIn(c);
  return view(await templateNamed(s, name));
}

export async function createTemplate(s: Services, c: Caller, input: Omit<TemplateInput, 'description'> & { description?: string }): Promise<TemplateView> {
  const p = admin(c);
  const { boot, ...fields } = input;
  const t = await withEvents(
    s,
    (tx) => insertTemplate(tx, { ...fields, description: input.description ?? '', bootKernel: null, bootInitrd: null, bootCmdline: null, ...bootColumns(boot) }),
    (t) => infraEvent('template', t.id, 'created', { name: t.name, data: { by: p.username } }),
  );
  return view(t);
}

/** Change a template (existing VMs keep their size). */
export async function updateTemplate(s: Services, c: Caller, name: string, input: Partial<TemplateInput>): Promise<TemplateView> {
  const p = admin(c);
  const { boot, ...fields } = input;
  const id = (await templateNamed(s, name)).id;
  const t = await withEvents(
    s,
    (tx) => writeTemplate(tx, id, { ...fields, ...bootColumns(boot) }),
    (t) => infraEvent('template', t.id, 'updated', { name: t.name, data: { by: p.username } }),
  );
  return view(t);
}

/** Delete a template no VM uses (409 otherwise). */
export async function deleteTemplate(s: Services, c: Caller, name: string): Promise<void> {
  const p = admin(c);
  const t = await templateNamed(s, name);
  await withEvents(s, (tx) => removeTemplate(tx, t.id), () => infraEvent('template', t.id, 'deleted', { name: t.name, data: { by: p.username } }));
}
