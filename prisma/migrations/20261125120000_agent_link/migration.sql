-- AlterTable
ALTER TABLE "Host" ADD COLUMN     "memoryBytes" BIGINT NOT NULL DEFAULT 0,
ADD COLUMN     "diskBytes" BIGINT NOT NULL DEFAULT 0,
ADD COLUMN     "bridges" JSONB NOT NULL DEFAULT '[]',
ADD COLUMN     "pools" JSONB NOT NULL DEFAULT '[]',
ADD COLUMN     "certSerial" TEXT,
ADD COLUMN     "certExpiresAt" TIMESTAMP(3),
ADD COLUMN     "agentStartedAt" TIMESTAMP(3),
ADD COLUMN     "lastHelloAt" TIMESTAMP(3);

-- CreateTable
CREATE TABLE "JoinToken" (
    "id" UUID NOT NULL,
    "areaId" UUID NOT NULL,
    "secretHash" TEXT NOT NULL,
    "expiresAt" TIMESTAMP(3) NOT NULL,
    "createdById" UUID,
    "usedAt" TIMESTAMP(3),
    "usedByHostId" UUID,
    "revokedAt" TIMESTAMP(3),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "JoinToken_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "FenceReport" (
    "id" UUID NOT NULL,
    "hostId" UUID NOT NULL,
    "fencedAt" TIMESTAMP(3) NOT NULL,
    "leaseExpiredAt" TIMESTAMP(3) NOT NULL,
    "reason" TEXT NOT NULL,
    "domains" JSONB NOT NULL DEFAULT '[]',
    "receivedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "FenceReport_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "JoinToken_expiresAt_idx" ON "JoinToken"("expiresAt");

-- CreateIndex
CREATE INDEX "FenceReport_hostId_fencedAt_idx" ON "FenceReport"("hostId", "fencedAt");

-- AddForeignKey
ALTER TABLE "JoinToken" ADD CONSTRAINT "JoinToken_areaId_fkey" FOREIGN KEY ("areaId") REFERENCES "Area"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "JoinToken" ADD CONSTRAINT "JoinToken_createdById_fkey" FOREIGN KEY ("createdById") REFERENCES "User"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "JoinToken" ADD CONSTRAINT "JoinToken_usedByHostId_fkey" FOREIGN KEY ("usedByHostId") REFERENCES "Host"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "FenceReport" ADD CONSTRAINT "FenceReport_hostId_fkey" FOREIGN KEY ("hostId") REFERENCES "Host"("id") ON DELETE CASCADE ON UPDATE CASCADE;
