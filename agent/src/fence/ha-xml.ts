/** Tells an HA domain from the others by Kloudak's metadata in its XML (live, persistent or status XML). */
import { KLOUDAK_VM_NS } from '../xml/domain.js';

/** Whether a domain XML's Kloudak metadata marks the domain HA (whatever prefix libvirt kept for the namespace). */
export function isHaDomainXml(xml: string): boolean {
  const ns = KLOUDAK_VM_NS.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  const decl = new RegExp(`xmlns:([A-Za-z_][\\w.-]*)=(['"])${ns}\\2`).exec(xml);
  if (!decl) return false;
  const p = decl[1]!;
  return new RegExp(`<${p}:ha>\\s*true\\s*</${p}:ha>`).test(xml);
}
