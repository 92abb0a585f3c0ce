"""The Flask extensions, one bare instance each; create_app binds them."""

import sqlalchemy as sa
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from . import search_index
from .openapi import Api  # flask-smorest's, with the document's shared parts

# Named constraints keep migrations stable across SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=sa.MetaData(naming_convention=NAMING_CONVENTION))
# The search index is the migration's alone (chatapi/search_index.py): no comparison with the models sees it.
migrate = Migrate(render_as_batch=True, compare_type=True, include_object=search_index.include_object)
api = Api()
