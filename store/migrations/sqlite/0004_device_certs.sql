-- Device certificates for mutual TLS at the edge: the certificate `sentinella device add`
-- issued last. When cert_sha256 is set, the edge accepts only that certificate for the device
-- (re-issuing one supersedes the previous). Revocations are polled by revoked_at.

ALTER TABLE devices ADD COLUMN cert_serial TEXT;
ALTER TABLE devices ADD COLUMN cert_sha256 TEXT CHECK (cert_sha256 IS NULL OR length(cert_sha256) = 64);
ALTER TABLE devices ADD COLUMN cert_issued_at INTEGER;
CREATE INDEX devices_revoked_idx ON devices (revoked_at) WHERE revoked_at IS NOT NULL;
