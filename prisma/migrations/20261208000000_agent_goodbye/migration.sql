-- A clean agent stop (issue 11): the agent says Goodbye and the VMs it leaves running are
-- recorded; while they are, the host's evacuation is held (nothing fenced them). A held
-- evacuation whose host comes back is cancelled.

-- AlterTable
ALTER TABLE "Host" ADD COLUMN "agentStoppedAt" TIMESTAMP(3),
ADD COLUMN "agentStoppedVmIds" TEXT[] DEFAULT ARRAY[]::TEXT[];

-- AlterEnum
ALTER TYPE "EvacuationState" ADD VALUE 'cancelled';
