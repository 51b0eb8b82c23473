/**
 * @kloudak/libvirt: Kloudak's own client of libvirt's RPC protocol over the libvirtd unix socket.
 *
 *   const lv = await Libvirt.connect({ uri: 'qemu:///system' });
 *   const dom = await lv.lookupDomainByName('vm1');
 *
 * {@link Libvirt} is the typed API; {@link LibvirtConnection} the connection underneath (calls,
 * events, streams, keepalive, reconnection); xdr and protocol hold the hand-written codecs.
 */
export * from './xdr.js';
export * from './errors.js';
export * from './protocol.js';
export * from './client.js';
export * from './api.js';
