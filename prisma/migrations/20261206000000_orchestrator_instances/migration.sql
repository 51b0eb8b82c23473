-- Several orchestrators: each host's session owner, the instances' registrations, and leadership.
-- AlterTable
ALTER TABLE "Host" ADD COLUMN "ownerInstanceId" UUID,
ADD COLUMN "sessionOpen" BOOLEAN NOT NULL DEFAULT false,
ADD COLUMN "sessionEpoch" BIGINT NOT NULL DEFAULT 0;

-- CreateIndex
CREATE INDEX "Host_ownerInstanceId_idx" ON "Host"("ownerInstanceId");

-- CreateTable
CREATE TABLE "OrchestratorInstance" (
    "id" UUID NOT NULL,
    "subject" TEXT NOT NULL,
    "startedAt" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "expiresAt" TIMESTAMPTZ(3) NOT NULL,

    CONSTRAINT "OrchestratorInstance_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "OrchestratorInstance_expiresAt_idx" ON "OrchestratorInstance"("expiresAt");

-- CreateTable
CREATE TABLE "LeaderLease" (
    "name" TEXT NOT NULL,
    "instanceId" UUID NOT NULL,
    "term" BIGINT NOT NULL,
    "since" TIMESTAMPTZ(3) NOT NULL,
    "expiresAt" TIMESTAMPTZ(3) NOT NULL,

    CONSTRAINT "LeaderLease_pkey" PRIMARY KEY ("name")
);
