"""Which packages the wheel holds (the rest of the metadata is in pyproject.toml).

``apps`` and ``ops``, and the DBA's ``db/`` folder (schemas, FDW edges, split SQL, migrations,
``alembic.ini``) as the package ``rose_ash_db``: an installed ``rose`` finds it through the
package (``ops.paths.DB_DIR``), not the working directory. pyproject.toml cannot map a folder
to a package name next to package discovery, hence this file.
"""

from setuptools import find_namespace_packages, setup

DB_FILES = ["alembic.ini", "**/*.sql", "**/*.toml", "**/*.py", "**/*.mako"]

setup(
    # Namespace packages: the templates' and static files' folders are packages too (data-only),
    # as setuptools wants every folder whose files it installs declared.
    packages=[
        *find_namespace_packages(include=["apps*", "ops*"], exclude=["*__pycache__*"]),
        "rose_ash_db",
        *(
            f"rose_ash_db.{folder}"
            for folder in find_namespace_packages(where="db", exclude=["*__pycache__*"])
        ),
    ],
    package_dir={"rose_ash_db": "db"},
    package_data={
        "": ["templates/**/*", "static/**/*"],
        "ops.deploy": ["Caddyfile.j2"],
        "rose_ash_db": DB_FILES,
    },
    exclude_package_data={"": ["**/__pycache__/*"]},
)
