from django.urls import path

from sessions_app import views

urlpatterns = [
    path("chat", views.ChatView.as_view(), name="chat"),
    path("sessions", views.SessionListView.as_view(), name="session-list"),
    path("sessions/<str:session_id>", views.SessionDetailView.as_view(), name="session-detail"),
    path(
        "sessions/<str:session_id>/messages",
        views.SessionMessagesView.as_view(),
        name="session-messages",
    ),
    path("health", views.HealthView.as_view(), name="health"),
]
