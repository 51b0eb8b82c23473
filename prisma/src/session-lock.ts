import pg from 'pg';

/**
 * A PostgreSQL session-level advisory lock on a connection of its own, taken without waiting
 * (`pg_try_advisory_lock`). PostgreSQL holds it for as long as that connection lives: when the
 * holding process dies or is cut off, the server ends its session and the lock is free for another
 * process at once — the basis of "one of several processes does X, another takes over".
 */
export class SessionLock {
  private client: pg.Client | undefined;
  private holding = false;

  constructor(
    private readonly url: string,
    private readonly key: bigint,
    private readonly connectTimeoutMs = 10_000,
  ) {}

  /** Whether this process holds the lock, as far as it knows (false once its connection failed). */
  get held(): boolean {
    return this.holding;
  }

  /** Take the lock if it is free; true when this process holds it (already or now). Throws when the database cannot be reached. */
  async tryAcquire(): Promise<boolean> {
    if (this.holding && this.client) return true;
    if (!this.client) {
      const c = new pg.Client({ connectionString: this.url, connectionTimeoutMillis: this.connectTimeoutMs, keepAlive: true });
      c.on('error', () => this.lost(c));
      c.on('end', () => this.lost(c));
      try {
        await c.connect();
      } catch (err) {
        await c.end().catch(() => undefined);
        throw err;
      }
      this.client = c;
    }
    const c = this.client;
    const r = await c.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1::bigint) AS ok', [this.key.toString()]);
    this.holding = this.client === c && r.rows[0]?.ok === true;
    return this.holding;
  }

  private lost(c: pg.Client): void {
    if (this.client !== c) return;
    this.client = undefined;
    this.holding = false;
    void c.end().catch(() => undefined);
  }

  /** Give the lock up (and the connection): another process can take it at once. */
  async release(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    this.holding = false;
    if (!c) return;
    await c.query('SELECT pg_advisory_unlock_all()').catch(() => undefined);
    await c.end().catch(() => undefined);
  }
}
