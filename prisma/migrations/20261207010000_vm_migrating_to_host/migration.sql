-- Host drain: the host a migrating VM moves to. Placement counts the VM's vCPU and RAM there as
-- well until its claim moves (or stays), so no create takes the room a migration needs.

-- AlterTable
ALTER TABLE "Vm" ADD COLUMN "migratingToHostId" UUID;
