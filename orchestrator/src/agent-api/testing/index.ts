// `@kloudak/orchestrator/agent-testing`: what tests and benchmarks need to drive the agent link
// from outside the orchestrator package.
export { enrollSimAgent, fetchPinnedCa, PinningError, SimAgent, type SimAgentOptions, type SimCommandAnswer, type SimIdentity, type SimStats } from './sim-agent.js';
export { createJoinToken, formatJoinToken, parseJoinToken } from '../../store/join-tokens.js';
