/**
 * Turn `limit + 1` rows fetched in key order into a page: the extra row only tells that a next
 * page exists, and the last returned key is the cursor for it.
 */
export function page<R, V>(rows: R[], limit: number, key: (r: R) => string, view: (r: R) => V) {
  const items = rows.slice(0, limit);
  const last = items[items.length - 1];
  return { items: items.map(view), nextCursor: rows.length > limit && last !== undefined ? key(last) : null };
}
