/**
 * The agent's library surface, for the daemon's composition root, the benchmarks and the e2e
 * tests: host operations, the ports and their real drivers, the settings and the VM spec.
 */
export * from './ports.js';
export * from './names.js';
export * from './spec.js';
export * from './settings.js';
export { AGENT_VERSION } from './version.js';
export { HostOperations, type HostOpsDeps, type HostInventory, type VmLocation } from './ops/host-ops.js';
export { LibvirtHypervisor } from './hypervisor/libvirt-hypervisor.js';
export { LibvirtStorage } from './storage/libvirt-storage.js';
export { OvsNetworkDriver } from './network/ovs.js';
export { IsoSeedBuilder, SeedToolMissingError, SEED_ISO_PROGRAMS, seedFiles, seedIsoArgv } from './cloudinit/seed.js';
export { ProcessRunner, CommandError } from './system/command-runner.js';
export { RevertStack } from './runner/revert.js';
export { domainXml, nicXml, consoleLogPath, seedFilePath } from './xml/domain.js';
