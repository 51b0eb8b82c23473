// `@kloudak/orchestrator`: start an orchestrator in-process (tests, benchmarks, tools).
export { startOrchestrator, type Orchestrator, type StartOptions } from './server.js';
export { configWith, readConfig, type OrchestratorConfig } from './config.js';
export { systemClock, type Clock } from './clock.js';
export type { AgentChannel, SendOptions } from './agent-api/channel.js';
export type { AgentCommand, CommandAction, CommandResult, CommandErrorCode, NicSpec } from './domain/agent.js';
export { EVENT_STREAM, EVENT_SUBJECTS, eventSubject, toEvent, type KloudakEvent, type OutboxRow } from './events/event.js';
// Benchmarks commit state changes with their events as a use case does (event-latency.bench).
export { appendEvents } from './store/outbox.js';
export type { EventInput } from './events/event.js';
