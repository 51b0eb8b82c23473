-- Failover (issue 11): VM states recovering and lost, why a VM is in its state, host-down episodes
-- and one evacuation per episode.

-- AlterEnum
ALTER TYPE "VmState" ADD VALUE 'recovering';
ALTER TYPE "VmState" ADD VALUE 'lost';

-- CreateEnum
CREATE TYPE "EvacuationState" AS ENUM ('pending', 'planned');

-- AlterTable
ALTER TABLE "Vm" ADD COLUMN "stateReason" TEXT;

-- AlterTable
ALTER TABLE "Host" ADD COLUMN "downEpisode" INTEGER NOT NULL DEFAULT 0;

-- CreateTable
CREATE TABLE "Evacuation" (
    "id" UUID NOT NULL,
    "hostId" UUID NOT NULL,
    "episode" INTEGER NOT NULL,
    "state" "EvacuationState" NOT NULL DEFAULT 'pending',
    "evidence" JSONB NOT NULL DEFAULT '{}',
    "plan" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "plannedAt" TIMESTAMP(3),

    CONSTRAINT "Evacuation_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "Evacuation_hostId_episode_key" ON "Evacuation"("hostId", "episode");

-- CreateIndex
CREATE INDEX "Evacuation_state_idx" ON "Evacuation"("state");

-- AddForeignKey
ALTER TABLE "Evacuation" ADD CONSTRAINT "Evacuation_hostId_fkey" FOREIGN KEY ("hostId") REFERENCES "Host"("id") ON DELETE CASCADE ON UPDATE CASCADE;
