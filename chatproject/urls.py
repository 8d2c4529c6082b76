from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("sessions_app.urls")),
    path("api/v1/schema", SpectacularAPIView.as_view(), name="schema"),
]

handler400 = "sessions_app.errors.bad_request"
handler403 = "sessions_app.errors.permission_denied"
handler404 = "sessions_app.errors.not_found"
handler500 = "sessions_app.errors.server_error"
