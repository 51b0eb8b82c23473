/**
 * Test helpers for packages that test against libvirt (import from `@kloudak/libvirt/testing`):
 * starting the real daemon when needed, and a scripted fake daemon for unit tests.
 */
export * from './libvirtd.js';
export * from './fake-daemon.js';
