"""slapnode: a SlapOS-compatible node stack (SLAP client, slapproxy, slapformat, slapgrid, client)."""
from setuptools import find_namespace_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="slapnode",
    version="0.1.0.dev0",
    description="A SlapOS-compatible node stack: SLAP client library, slapproxy, slapformat, slapgrid and the slapos command",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="GPL-3.0-or-later",
    python_requires=">=3.10,<3.14",
    # `slapos` is a native (PEP 420) namespace package: no slapos/__init__.py and no
    # slapos/recipe/__init__.py, so that slapos.recipe.template, slapos.cookbook & co
    # import side by side with us inside one buildout process.
    packages=find_namespace_packages(include=["slapos", "slapos.*"]),
    include_package_data=True,
    package_data={"": ["*.sql", "*.xsd", "*.cfg", "*.in", "*.json", "*.html", "*.css", "*.js", "*.sh"]},
    zip_safe=False,
    install_requires=[
        "zc.buildout>=5",
        "supervisor>=4.2",
        "lxml>=4.9",
        "requests>=2.28",
        "netifaces-plus>=0.12",
        "zope.interface>=5",
        "waitress>=2.1",
        "psutil>=5.9",
        "jinja2>=3.0",
        "cryptography>=41",
        # the request schemas of software releases ($ref, allOf/oneOf, pattern, ...); imported
        # only by `slapos request` with a parameters file
        "jsonschema>=4.18",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2",
            "pytest-xdist>=3",
            "hypothesis>=6",
            "ruff>=0.4",
        ],
    },
    entry_points={
        "console_scripts": [
            "slapos = slapos.cli.main:main",
            "slapos-watchdog = slapos.grid.watchdog:main",
            # legacy entry points kept for old scripts and crontabs
            "slapgrid-sr = slapos.cli.legacy:slapgrid_sr",
            "slapgrid-cp = slapos.cli.legacy:slapgrid_cp",
            "slapgrid-ur = slapos.cli.legacy:slapgrid_ur",
            "slapformat = slapos.cli.legacy:slapformat",
            "slapproxy = slapos.cli.legacy:slapproxy",
            "slapconsole = slapos.cli.legacy:slapconsole",
            "bang = slapos.cli.legacy:bang",
        ],
        "zc.buildout": [
            "config = slapos.recipe.slapnode.config:Recipe",
            "template = slapos.recipe.slapnode.template:Recipe",
            "wrapper = slapos.recipe.slapnode.wrapper:Recipe",
            "mkdir = slapos.recipe.slapnode.mkdir:Recipe",
            "password = slapos.recipe.slapnode.password:Recipe",
            "publish = slapos.recipe.slapnode.publish:Recipe",
            "request = slapos.recipe.slapnode.request:Recipe",
            "promise = slapos.recipe.slapnode.promise:Recipe",
            "cmmi = slapos.recipe.slapnode.cmmi:Recipe",
        ],
        "zc.buildout.extension": [
            "profile-base-location = slapos.grid.buildout_extension:extension",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Framework :: Buildout",
    ],
)
