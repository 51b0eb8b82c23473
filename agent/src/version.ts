/** The agent's version: reported in Hello and Enroll, printed by `kloudak-agent --version`, and the RPM's version. */
export const AGENT_VERSION = '0.1.0';
