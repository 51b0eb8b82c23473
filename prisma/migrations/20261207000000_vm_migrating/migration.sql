-- Host drain (issue 11, "Admin actions"): a VM being moved to another host of its area by a drain
-- (live migration, or stop and restart from its disk on the shared pool). Power actions wait.

-- AlterEnum
ALTER TYPE "VmState" ADD VALUE 'migrating';
