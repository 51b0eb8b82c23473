/** The agent daemon (being built): for now it only refuses to run without its link. */
export async function runDaemon(_argv: string[]): Promise<number> {
  process.stderr.write('kloudak-agent: the daemon is not built yet\n');
  return 1;
}
