import test from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkXmlChars, escapeAttr, escapeText, escapeXml, xml, XmlFragment, XmlValueError } from './escape.js';

test('the five special characters are escaped, everything else is kept', () => {
  assert.equal(escapeXml(`a&b<c>d"e'f`), 'a&amp;b&lt;c&gt;d&quot;e&apos;f');
  assert.equal(escapeXml('&amp;'), '&amp;amp;', 'escaping is not idempotent: it is applied exactly once');
  assert.equal(escapeText('é日本😀 /path/x=y'), 'é日本😀 /path/x=y');
  assert.equal(escapeAttr('x'), 'x');
  assert.equal(escapeXml(''), '');
});

test('control characters, lone surrogates and non-characters are refused', () => {
  for (const bad of ['a\u0000b', 'line\nbreak', 'tab\there', 'cr\r', '\u001b[31m', 'del\u007f', 'nel\u0085', '\ud83d', 'x\ude00', '\ufffe', '\uffff']) {
    assert.throws(() => escapeXml(bad), XmlValueError, JSON.stringify(bad));
    assert.throws(() => checkXmlChars(bad), /not allowed in XML value/);
  }
  assert.equal(checkXmlChars('ok 😀'), 'ok 😀');
});

test('the xml tag escapes values, keeps fragments, joins arrays, drops null and undefined', () => {
  const inner = xml`<b v='${"'"}'/>`;
  assert.ok(inner instanceof XmlFragment);
  assert.equal(inner.toString(), `<b v='&apos;'/>`);
  const items = [1, 2].map((i) => xml`<i n='${i}'/>`);
  assert.equal(xml`<a t='${'x"y'}'>${inner}${items}${null}${undefined}${10n}</a>`.toString(), `<a t='x&quot;y'><b v='&apos;'/><i n='1'/><i n='2'/>10</a>`);
  assert.equal(xml`<a>${'<b/>'}</a>`.toString(), '<a>&lt;b/&gt;</a>', 'a string is never markup');
  assert.throws(() => xml`<a>${Number.NaN}</a>`, XmlValueError);
  assert.throws(() => xml`<a>${Number.POSITIVE_INFINITY}</a>`, XmlValueError);
  assert.throws(() => xml`<a>${'bad\n'}</a>`, XmlValueError);
});

test('hostile values stay values: xmllint parses the document and reads them back unchanged', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kloudak-escape-'));
  try {
    const hostile = [`' onload='x`, `"><script>alert(1)</script>`, `&lt;already&gt;`, `]]> <!-- -->`, `<?xml?>`, 'é & 😀'];
    for (const [i, v] of hostile.entries()) {
      const file = join(dir, `${i}.xml`);
      // Both quote styles of attributes, and element text.
      writeFileSync(file, xml`<doc a='${v}' b="${v}"><t>${v}</t></doc>`.toString());
      for (const expr of ['string(/doc/@a)', 'string(/doc/@b)', 'string(/doc/t)']) {
        const r = spawnSync('xmllint', ['--xpath', expr, file], { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stdout.replace(/\n$/, ''), v, `${expr} of ${JSON.stringify(v)}`); // xmllint adds a newline
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
