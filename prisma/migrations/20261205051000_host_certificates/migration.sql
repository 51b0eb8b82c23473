-- Certificate renewal and re-enrollment (issue 11): the serial a renewal replaced stays accepted
-- for a short grace; a join token may be bound to an existing host to re-enroll it.
-- AlterTable
ALTER TABLE "Host" ADD COLUMN     "prevCertSerial" TEXT,
ADD COLUMN     "prevCertValidUntil" TIMESTAMP(3);

-- AlterTable
ALTER TABLE "JoinToken" ADD COLUMN     "forHostId" UUID;

-- CreateIndex
CREATE INDEX "JoinToken_forHostId_idx" ON "JoinToken"("forHostId");

-- AddForeignKey
ALTER TABLE "JoinToken" ADD CONSTRAINT "JoinToken_forHostId_fkey" FOREIGN KEY ("forHostId") REFERENCES "Host"("id") ON DELETE CASCADE ON UPDATE CASCADE;
