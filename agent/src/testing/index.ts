/** Test helpers of the agent (network namespaces, Open vSwitch service), for other packages' tests and benchmarks. */
export * from './netns.js';
export * from './ovs-service.js';
export * from './sim-host.js';
export * from './private-libvirtd.js';
