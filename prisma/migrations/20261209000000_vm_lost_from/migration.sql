-- A lost VM remembers the state it was lost from (issue 11): a lost HA VM that was running is
-- started again when its host returns with the domain off (fenced while cut off, or rebooted).

-- AlterTable
ALTER TABLE "Vm" ADD COLUMN "lostFrom" TEXT;
