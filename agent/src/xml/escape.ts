/**
 * XML escaping for the XML the agent hands to libvirt. Every value that reaches a document goes
 * through {@link escapeXml} (directly or through the {@link xml} template tag), which also
 * refuses characters that have no business in a libvirt document: control characters (tab and
 * newline included: no name, path or address of ours contains one, and in an attribute they would
 * be normalised to spaces), lone UTF-16 surrogates and the non-characters U+FFFE/U+FFFF.
 */

/**
 * C0 and C1 controls, DEL, U+FFFE, U+FFFF and lone surrogates (with the `u` flag a valid pair is
 * one code point, so the surrogate range only matches unpaired halves).
 */
// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const FORBIDDEN = /[\u0000-\u001f\u007f-\u009f\ud800-\udfff\ufffe\uffff]/u;

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };

/** Thrown for a value that cannot be put into an XML document. */
export class XmlValueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'XmlValueError';
  }
}

/** Throws {@link XmlValueError} when `s` holds a character refused in documents (see above). */
export function checkXmlChars(s: string): string {
  const m = FORBIDDEN.exec(s);
  if (m) {
    const code = m[0].codePointAt(0)!.toString(16).padStart(4, '0');
    throw new XmlValueError(`character U+${code} not allowed in XML value ${JSON.stringify(s)}`);
  }
  return s;
}

/**
 * Escapes `& < > " '`, so the result is safe both as element text and inside an attribute value
 * quoted with either quote character. Throws on refused characters.
 */
export function escapeXml(s: string): string {
  return checkXmlChars(s).replace(/[&<>"']/g, (c) => ENTITIES[c]!);
}

/** Escapes element text (same as {@link escapeXml}). */
export const escapeText = escapeXml;
/** Escapes an attribute value (same as {@link escapeXml}). */
export const escapeAttr = escapeXml;

/** A piece of XML that is already well-formed and escaped; interpolated as is by {@link xml}. */
export class XmlFragment {
  constructor(private readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

/** What {@link xml} accepts in a placeholder. */
export type XmlValue = string | number | bigint | XmlFragment | null | undefined | readonly XmlValue[];

function render(v: XmlValue): string {
  if (v === null || v === undefined) return '';
  if (v instanceof XmlFragment) return v.toString();
  if (Array.isArray(v)) return v.map(render).join('');
  if (typeof v === 'string') return escapeXml(v);
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new XmlValueError(`not a finite number: ${v}`);
    return String(v);
  }
  throw new XmlValueError(`cannot put a ${typeof v} into XML`);
}

/**
 * Template tag building XML: strings and numbers in placeholders are escaped, nested fragments
 * (and arrays of them) are inserted as they are, `null`/`undefined` vanish.
 *
 *     xml`<source bridge='${bridge}'/>`   // bridge escaped
 */
export function xml(strings: TemplateStringsArray, ...values: XmlValue[]): XmlFragment {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1]!;
  return new XmlFragment(out);
}
