/** Pagination of every list: at most `limit` items after the key `after` (a name, or an id). */
export interface ListInput {
  limit?: number;
  after?: string;
}

/** A page of a list: items and the cursor of the next page (null on the last one). */
export interface Page<V> {
  items: V[];
  nextCursor: string | null;
}

/** Items per page when the caller does not say. */
export const DEFAULT_LIMIT = 100;

/**
 * Turn `limit + 1` rows fetched in key order into a page: the extra row only tells that a next
 * page exists, and the last returned key is the cursor for it.
 */
export function page<R, V>(rows: R[], limit: number, key: (r: R) => string, view: (r: R) => V): Page<V> {
  const items = rows.slice(0, limit);
  const last = items[items.length - 1];
  return { items: items.map(view), nextCursor: rows.length > limit && last !== undefined ? key(last) : null };
}
