// Where the e2e tests and the benchmarks find the repository's built pieces and the test guest.
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository's root. */
export const REPO = fileURLToPath(new URL('../../../', import.meta.url));
/** The tiny test guest (scripts/build-test-guest.sh): template.qcow2, its kernels, initrd and cmdline. */
export const GUEST = process.env['KLOUDAK_TEST_GUEST_DIR'] ?? join(REPO, '.cache', 'test-guest');
/** The libvirt daemon a qemu host's VMs run under. */
export const QEMU_URI = 'qemu:///system';
