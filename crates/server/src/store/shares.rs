//! Share definitions (SMB/NFS exports): the SQL half. Validation lives in `crate::shares`.
