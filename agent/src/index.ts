export * from './ports.js';
export * from './names.js';
