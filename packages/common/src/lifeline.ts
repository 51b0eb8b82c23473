import { fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { ConfigError } from './errors.js';

/** A running watch on a lifeline (see {@link watchLifeline}). */
export interface Lifeline {
  /** Stops watching and closes the descriptor; `onLost` is not called afterwards. Idempotent. */
  close(): void;
}

/**
 * Watches a lifeline: the read end of a pipe whose write end only the parent process holds (and
 * never writes to). However the parent ends — exit, crash, SIGKILL — the kernel closes its write
 * end, this read end reports end-of-file, and `onLost` is called, once. A process started by a
 * script (scripts/up.sh) uses it to stop with its parent instead of outliving it in its own session.
 *
 * The watch does not keep the event loop alive. It only works when no other process holds the
 * write end open: the parent must not let it be inherited by anything long-lived, this process
 * included. Data that does arrive is ignored.
 *
 * A socket works the same way (a Node parent's extra `stdio: 'pipe'` is a socketpair).
 *
 * @throws ConfigError when `fd` is not an open pipe or socket.
 */
export function watchLifeline(fd: number, onLost: (reason: string) => void): Lifeline {
  if (!Number.isInteger(fd) || fd < 0) throw new ConfigError(`lifeline: ${fd} is not a file descriptor`);
  let isPipe: boolean;
  try {
    const st = fstatSync(fd);
    isPipe = st.isFIFO() || st.isSocket();
  } catch (err) {
    throw new ConfigError(`lifeline: file descriptor ${fd} is not open (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  if (!isPipe) throw new ConfigError(`lifeline: file descriptor ${fd} is not a pipe or a socket`);

  // A net.Socket over the fd: libuv polls it (no thread-pool thread blocked in read(2)).
  const socket = new Socket({ fd, readable: true, writable: false });
  let done = false;
  const lost = (reason: string): void => {
    if (done) return;
    done = true;
    socket.destroy();
    onLost(reason);
  };
  socket.on('data', () => undefined);
  socket.once('end', () => lost('end of file: the parent process is gone'));
  // An error or a close that did not come from close() means the lifeline cannot be trusted any
  // more: treat it as lost, so the process errs on the side of stopping.
  socket.once('error', (err) => lost(`read error: ${err.message}`));
  socket.once('close', () => lost('closed'));
  socket.unref();
  return {
    close: () => {
      done = true;
      socket.destroy();
    },
  };
}
