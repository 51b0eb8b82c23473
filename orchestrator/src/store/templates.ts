// VM templates.
import type { Database } from '@kloudak/prisma';
import type { DbOrTx } from './db.js';

/** A template row. */
export interface TemplateRow {
  id: string;
  name: string;
  os: string;
  description: string;
  cpu: number;
  ramMb: number;
  diskGb: number;
  image: string;
  /** Direct kernel boot: paths on the hosts and the kernel command line (all null: boot the disk). */
  bootKernel: string | null;
  bootInitrd: string | null;
  bootCmdline: string | null;
  createdAt: Date;
}

/** What an admin sets on a template. */
export type TemplateFields = Pick<TemplateRow, 'name' | 'os' | 'description' | 'cpu' | 'ramMb' | 'diskGb' | 'image' | 'bootKernel' | 'bootInitrd' | 'bootCmdline'>;

const TEMPLATE_COLUMNS = '"id", "name", "os", "description", "cpu", "ramMb", "diskGb", "image", "bootKernel", "bootInitrd", "bootCmdline", "createdAt"';

/**
 * A page of templates in name order, read on the bare driver (Database.read): Prisma's mapping
 * of 1,000 rows cost ~3 ms of CPU through findMany and ~1 ms through \$queryRaw, about as much
 * as the rest of the request (list bench profile). The columns are TemplateRow's.
 */
export async function listTemplates(db: Pick<Database, 'read'>, q: { after?: string; take: number }): Promise<TemplateRow[]> {
  return q.after === undefined
    ? db.read<TemplateRow>(`SELECT ${TEMPLATE_COLUMNS} FROM "Template" ORDER BY "name" ASC LIMIT $1`, [q.take])
    : db.read<TemplateRow>(`SELECT ${TEMPLATE_COLUMNS} FROM "Template" WHERE "name" > $2 ORDER BY "name" ASC LIMIT $1`, [q.take, q.after]);
}

export async function templateByName(db: DbOrTx, name: string): Promise<TemplateRow | null> {
  return db.template.findUnique({ where: { name } });
}

export async function createTemplate(db: DbOrTx, t: TemplateFields): Promise<TemplateRow> {
  return db.template.create({ data: t });
}

export async function updateTemplate(db: DbOrTx, id: string, t: Partial<TemplateFields>): Promise<TemplateRow> {
  return db.template.update({ where: { id }, data: t });
}

export async function deleteTemplate(db: DbOrTx, id: string): Promise<void> {
  await db.template.delete({ where: { id } });
}
