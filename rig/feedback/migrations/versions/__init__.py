"""The metadata store's migrations, one file per revision (a package so that they ship with `rig`)."""
