-- VMs and networks for users: task leases and backoff, step attempts and deadlines, template boot
-- settings, a network's own subnet, NIC positions, address scopes, idempotency keys, quotas.

-- AlterTable
ALTER TABLE "Template" ADD COLUMN     "bootKernel" TEXT,
ADD COLUMN     "bootInitrd" TEXT,
ADD COLUMN     "bootCmdline" TEXT;

-- AlterTable
ALTER TABLE "Network" ADD COLUMN     "subnet" TEXT,
ADD COLUMN     "gateway" TEXT,
ADD COLUMN     "lastTaskId" UUID;

-- AlterTable
ALTER TABLE "Vm" ADD COLUMN     "sshKeys" JSONB NOT NULL DEFAULT '[]',
ADD COLUMN     "userData" TEXT,
ADD COLUMN     "lastTaskId" UUID;

-- AlterTable
ALTER TABLE "VmInterface" ADD COLUMN     "position" INTEGER NOT NULL DEFAULT 0;

-- AlterTable: an address belongs to an address space (the area's subnet or a network's own).
ALTER TABLE "IpAllocation" ADD COLUMN     "scope" TEXT,
ADD COLUMN     "networkId" UUID;
UPDATE "IpAllocation" SET "scope" = 'area:' || "areaId"::text;
ALTER TABLE "IpAllocation" ALTER COLUMN "scope" SET NOT NULL;
DROP INDEX "IpAllocation_areaId_address_key";
ALTER TABLE "IpAllocation" DROP CONSTRAINT "IpAllocation_vmId_fkey";

-- AlterTable
ALTER TABLE "Task" ADD COLUMN     "seq" BIGSERIAL NOT NULL,
ADD COLUMN     "leaseOwner" TEXT,
ADD COLUMN     "leaseExpiresAt" TIMESTAMP(3),
ADD COLUMN     "runAfter" TIMESTAMP(3),
ADD COLUMN     "startedAt" TIMESTAMP(3),
ADD COLUMN     "finishedAt" TIMESTAMP(3),
ADD COLUMN     "placement" JSONB,
ADD COLUMN     "rollbackLog" JSONB NOT NULL DEFAULT '[]';
DROP INDEX "Task_state_idx";

-- AlterTable
ALTER TABLE "TaskStep" ADD COLUMN     "attempts" INTEGER NOT NULL DEFAULT 0,
ADD COLUMN     "deadline" TIMESTAMP(3);

-- CreateTable
CREATE TABLE "IdempotencyKey" (
    "id" UUID NOT NULL,
    "userId" UUID NOT NULL,
    "key" TEXT NOT NULL,
    "method" TEXT NOT NULL,
    "path" TEXT NOT NULL,
    "requestHash" TEXT NOT NULL,
    "status" INTEGER,
    "response" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "expiresAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "IdempotencyKey_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "WorkspaceQuota" (
    "workspaceId" UUID NOT NULL,
    "vms" INTEGER,
    "cpu" INTEGER,
    "ramMb" INTEGER,
    "diskGb" INTEGER,
    "networks" INTEGER,
    "addresses" INTEGER,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "WorkspaceQuota_pkey" PRIMARY KEY ("workspaceId")
);

-- CreateIndex
CREATE UNIQUE INDEX "IpAllocation_scope_address_key" ON "IpAllocation"("scope", "address");

-- CreateIndex
CREATE INDEX "IpAllocation_areaId_idx" ON "IpAllocation"("areaId");

-- CreateIndex
CREATE UNIQUE INDEX "Task_seq_key" ON "Task"("seq");

-- CreateIndex
CREATE INDEX "Task_targetId_idx" ON "Task"("targetId");

-- CreateIndex
CREATE INDEX "Task_state_runAfter_idx" ON "Task"("state", "runAfter");

-- CreateIndex
CREATE UNIQUE INDEX "IdempotencyKey_userId_key_key" ON "IdempotencyKey"("userId", "key");

-- CreateIndex
CREATE INDEX "IdempotencyKey_expiresAt_idx" ON "IdempotencyKey"("expiresAt");

-- AddForeignKey
ALTER TABLE "IpAllocation" ADD CONSTRAINT "IpAllocation_networkId_fkey" FOREIGN KEY ("networkId") REFERENCES "Network"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "IpAllocation" ADD CONSTRAINT "IpAllocation_vmId_fkey" FOREIGN KEY ("vmId") REFERENCES "Vm"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "IdempotencyKey" ADD CONSTRAINT "IdempotencyKey_userId_fkey" FOREIGN KEY ("userId") REFERENCES "User"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "WorkspaceQuota" ADD CONSTRAINT "WorkspaceQuota_workspaceId_fkey" FOREIGN KEY ("workspaceId") REFERENCES "Workspace"("id") ON DELETE CASCADE ON UPDATE CASCADE;
